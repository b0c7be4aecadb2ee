"""The :class:`Network` description: an input shape, an encoder and an ordered list of named
layers, with shape inference, parameter shapes and TOML/JSON I/O.

A description holds no weights: it is what every consumer (the reference forward, and in later
steps the kernels, training, energy, NIR and HDF5) reads instead of re-deriving a shape. A
description that cannot run is refused when it is built, with one :class:`ConfigError` whose
one-line message names the layer (index and name) and the field.
"""
import json
from pathlib import Path

from .layers import (ENCODER_TYPES, LAYER_TYPES, ConfigError, Encoder, Hybrid, Layer, _FieldError,
                     _NAME, _int)

__all__ = ["Network", "read_description", "parse_description"]

_TOP_FIELDS = ("name", "input", "encoder", "layers")


def _where(i, layer_or_name, type_name):
    name = layer_or_name if isinstance(layer_or_name, (str, type(None))) else layer_or_name.name
    return f"layer {i} ({'' if name is None else repr(name) + ', '}{type_name})"


class Network:
    """An ordered feed-forward spiking network description.

    Parameters
    ----------
    input_shape : (int, int, int)
        ``(C, H, W)`` of one input frame (any size).
    layers : list of Layer
        In order. Unnamed layers get the name ``<type in lower case><index>``.
    encoder : Encoder, default ``Hybrid()``
        How inputs become the first layer's input at each step (and the number of steps T).
    name : str, optional

    Raises
    ------
    ConfigError
        For a description that cannot run (shapes that do not chain, a kernel larger than its
        input, a misplaced layer, duplicate names, ...), naming the layer and field.

    Notes
    -----
    The structure rules: every spiking layer (:class:`LIF`, :class:`IF`) has exactly one
    synaptic layer (:class:`Conv2d` or :class:`Linear`) between it and the previous spiking
    layer (or the input), with any pools and :class:`Flatten` around it; one
    :class:`RateReadout` directly after the last spiking layer, followed only by
    :class:`Linear` and :class:`Flatten` layers (they run once, on rates).
    """

    def __init__(self, input_shape, layers, encoder=None, name=None):
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"network: name must be a string, got {name!r}")
        self.name = name
        self.input_shape = _check_input_shape(input_shape)
        if encoder is None:
            encoder = Hybrid()
        if not isinstance(encoder, Encoder):
            raise ConfigError(f"network: encoder must be Hybrid(...) or Direct(...), got "
                              f"{encoder!r}")
        self.encoder = encoder
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError("network: layers must be a non-empty list of layers")
        self.layers = _named(layers)
        self.shapes = self._infer_shapes()
        self._check_structure()

    # ------------------------------------------------------------------ validation
    def _infer_shapes(self):
        shapes, shape = [], self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except _FieldError as exc:
                raise ConfigError(f"{_where(i, layer, type(layer).__name__)}: {exc.field} "
                                  f"{exc}") from None
            if any(s < 1 for s in shape):
                raise ConfigError(f"{_where(i, layer, type(layer).__name__)}: output shape "
                                  f"{shape} is empty")
            shapes.append(tuple(int(s) for s in shape))
        return shapes

    def _fail(self, i, field, message):
        layer = self.layers[i]
        raise ConfigError(f"{_where(i, layer, type(layer).__name__)}: {field} {message}")

    def _check_structure(self):
        T = self.encoder.T
        synapses, readout = [], None
        for i, layer in enumerate(self.layers):
            kind = layer.kind
            if readout is not None:
                if type(layer).__name__ not in ("Linear", "Flatten"):
                    self._fail(i, "type", f"cannot follow the RateReadout (layer {readout}): "
                                          f"only Linear and Flatten run on its rates")
                continue
            if kind == "synapse":
                if synapses:
                    self._fail(i, "type", f"is a second synaptic layer after layer "
                                          f"{synapses[0]} with no LIF or IF between them")
                synapses.append(i)
            elif kind == "neuron":
                if not synapses:
                    self._fail(i, "type", "needs a Conv2d or Linear between it and the "
                                          "previous spiking layer (or the input)")
                if layer.phase >= T:
                    self._fail(i, "phase", f"{layer.phase} is >= the encoder's T={T}: the "
                                           f"layer would never update")
                synapses = []
            elif kind == "readout":
                if i == 0 or self.layers[i - 1].kind != "neuron":
                    self._fail(i, "type", "must directly follow a LIF or IF layer")
                readout = i
        if readout is None:
            raise ConfigError("network: layers: needs a RateReadout after the last LIF or IF "
                              "layer (it makes the output)")

    # ------------------------------------------------------------------ structure
    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key):
        """A layer by index or by name."""
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise KeyError(f"no layer named {key!r}; layers: {[ly.name for ly in self.layers]}")
        return self.layers[key]

    def index(self, name):
        """Index of the layer called ``name``."""
        return self.layers.index(self[name])

    def input_shape_of(self, i):
        """Input shape of layer ``i`` (per sample, per step)."""
        return self.input_shape if i == 0 else self.shapes[i - 1]

    @property
    def output_shape(self):
        """Shape of the network's output per sample (e.g. ``(10,)``)."""
        return self.shapes[-1]

    @property
    def T(self):
        """Number of time steps (the encoder's)."""
        return self.encoder.T

    @property
    def readout_index(self):
        return next(i for i, ly in enumerate(self.layers) if ly.kind == "readout")

    def spiking_layers(self):
        """Names of the LIF/IF layers, in order."""
        return [ly.name for ly in self.layers if ly.kind == "neuron"]

    def stages(self):
        """The time-stepped part as ``[(neuron index, [indices of the layers that drive it])]``:
        each spiking layer with the pools, Flatten and the one synaptic layer before it."""
        out, chain = [], []
        for i, layer in enumerate(self.layers[:self.readout_index]):
            if layer.kind == "neuron":
                out.append((i, chain))
                chain = []
            else:
                chain.append(i)
        return out

    def param_shapes(self):
        """``{"<layer>.weight": shape, "<layer>.bias": shape, ...}`` in layer order."""
        out = {}
        for i, layer in enumerate(self.layers):
            for k, s in layer.param_shapes(self.input_shape_of(i)).items():
                out[f"{layer.name}.{k}"] = tuple(int(d) for d in s)
        return out

    def n_params(self):
        """Number of trainable values."""
        n = 0
        for s in self.param_shapes().values():
            size = 1
            for d in s:
                size *= d
            n += size
        return n

    def summary(self):
        """A table of the layers: index, name, type, output shape, parameter shapes."""
        rows = [f"input {self.input_shape}  encoder {self.encoder!r}"]
        shapes = self.param_shapes()
        for i, (layer, shape) in enumerate(zip(self.layers, self.shapes)):
            ps = {k.split(".", 1)[1]: v for k, v in shapes.items()
                  if k.split(".", 1)[0] == layer.name}
            rows.append(f"{i:3d} {layer.name:<12s} {type(layer).__name__:<11s} -> "
                        f"{str(shape):<16s} {ps if ps else ''}")
        return "\n".join(rows)

    # ------------------------------------------------------------------ I/O
    def __eq__(self, other):
        return isinstance(other, Network) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Network(name={self.name!r}, input_shape={self.input_shape}, " \
               f"{len(self.layers)} layers)"

    def to_dict(self):
        """A plain dict (JSON/TOML-ready) that :meth:`from_dict` turns back into this network."""
        d = {"input": list(self.input_shape), "encoder": _encoder_dict(self.encoder),
             "layers": [layer.to_dict() for layer in self.layers]}
        if self.name is not None:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d):
        """Build from a dict as :meth:`to_dict` gives (the ``[network]`` table of a file)."""
        if not isinstance(d, dict):
            raise ConfigError(f"network: must be a table/object, got {type(d).__name__}")
        bad = sorted(set(d) - set(_TOP_FIELDS))
        if bad:
            raise ConfigError(f"network: unknown field(s) {', '.join(map(repr, bad))} "
                              f"(fields: {', '.join(_TOP_FIELDS)})")
        for key in ("input", "layers"):
            if key not in d:
                raise ConfigError(f"network: {key} is required")
        if not isinstance(d["layers"], list):
            raise ConfigError(f"network: layers must be a list of tables, got "
                              f"{type(d['layers']).__name__}")
        encoder = _build_encoder(d.get("encoder", {"type": "Hybrid"}))
        layers = [_build_layer(i, ld) for i, ld in enumerate(d["layers"])]
        return cls(d["input"], layers, encoder=encoder, name=d.get("name"))

    @classmethod
    def from_file(cls, path):
        """Load from a ``.toml`` or ``.json`` file: its ``network`` table, or the whole file
        if it has none."""
        d = read_description(path)
        return cls.from_dict(d.get("network", d))

    def to_json(self, path=None):
        """The description as JSON text; with ``path``, also written there atomically."""
        text = json.dumps({"network": self.to_dict()}, indent=2) + "\n"
        if path is not None:
            from .._utils import atomic_write_bytes
            atomic_write_bytes(path, text.encode())
        return text


def read_description(path):
    """The dict of a ``.toml`` (tomllib; tomli on Python 3.10) or ``.json`` file; ValueError
    with a one-line message for a missing, unreadable or malformed file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ValueError(f"{path}: expected a .toml or .json file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    return parse_description(text, suffix, str(path))


def parse_description(text, suffix, where):
    """The dict of TOML or JSON ``text`` (``suffix`` ".toml" or ".json"); ValueError
    starting with ``where`` if it is malformed."""
    try:
        d = json.loads(text) if suffix == ".json" else _toml().loads(text)
    except ValueError as exc:                 # TOMLDecodeError is a ValueError
        raise ValueError(f"{where}: not valid {suffix[1:].upper()}: "
                         f"{str(exc).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{where}: the top level must be a table/object")
    return d


def _toml():
    try:
        import tomllib
    except ImportError:                  # Python 3.10
        import tomli as tomllib
    return tomllib


def _check_input_shape(shape):
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise ConfigError(f"network: input must be [C, H, W] (three integers), got {shape!r}")
    try:
        return tuple(_int(s, "input", 1) for s in shape)
    except _FieldError as exc:
        raise ConfigError(f"network: input {exc} (in {list(shape)!r})") from None


def _named(layers):
    out, seen = [], {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer) or isinstance(layer, Encoder):
            raise ConfigError(f"layer {i}: must be a layer (Conv2d, LIF, ...), got {layer!r}")
        name = layer.name if layer.name is not None else f"{type(layer).__name__.lower()}{i}"
        if name in seen:
            raise ConfigError(f"{_where(i, name, type(layer).__name__)}: name {name!r} is "
                              f"already used by layer {seen[name]}")
        seen[name] = i
        out.append(layer if layer.name == name else layer._with_name(name))
    return out


def _build_layer(i, d):
    if not isinstance(d, dict):
        raise ConfigError(f"layer {i}: must be a table/object, got {d!r}")
    name = d.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise ConfigError(f"layer {i} ({d.get('type')}): name must be an identifier (letters, "
                          f"digits, _), got {name!r}")
    return _build(LAYER_TYPES, d, None, lambda type_name: _where(i, name, type_name))


def _build(types, d, default_type, where):
    """A layer or encoder from its table ``d`` (``type``, optional ``name``, fields);
    ``where(type name)`` starts the error messages."""
    d = dict(d)
    type_name = d.pop("type", default_type)
    name = d.pop("name", None)
    if type_name not in types:
        raise ConfigError(f"{where(type_name)}: type "
                          f"{'is required' if type_name is None else f'{type_name!r} is unknown'}"
                          f" (known: {', '.join(types)})")
    try:
        return types[type_name]._build(d, name)
    except _FieldError as exc:
        raise ConfigError(f"{where(type_name)}: {exc.field} {exc}") from None


def _encoder_dict(enc):
    d = enc.to_dict()
    d.pop("name")
    return d


def _build_encoder(d):
    if not isinstance(d, dict):
        raise ConfigError(f"encoder: must be a table/object, got {d!r}")
    if "name" in d:
        raise ConfigError("encoder: name is not a field of an encoder")
    return _build(ENCODER_TYPES, d, "Hybrid",
                  lambda type_name: "encoder" if type_name not in ENCODER_TYPES
                  else f"encoder ({type_name})")
