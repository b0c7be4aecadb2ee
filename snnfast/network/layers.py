"""Layer specifications of a :class:`~snnfast.network.Network`: fields, validation, shapes.

A layer spec is a small description (no weights, no state; treat it as immutable, as a
:class:`~snnfast.network.Network` built from it keeps its inferred shapes): its fields are checked
when it is built, and :meth:`Layer.output_shape` infers its output shape from its input shape.
The equations each layer computes are written once, in the documentation page
``docs/network.rst``; :mod:`snnfast.reference` implements them in NumPy.

Shapes are per sample and per time step: ``(C, H, W)`` for images and feature maps,
``(F,)`` after :class:`Flatten`.
"""
import math
import re

import numpy as np

from .._utils import is_real_number

__all__ = ["ConfigError", "Layer", "Conv2d", "SumPool2d", "AvgPool2d", "MaxPool2d", "Flatten",
           "Linear", "LIF", "IF", "RateReadout", "Encoder", "Hybrid", "Direct", "LAYER_TYPES",
           "ENCODER_TYPES"]

_F32_MAX = float(np.finfo(np.float32).max)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_STEPS = 10_000          # the kernels' range for T (and n_det)


class ConfigError(ValueError):
    """A network description that cannot run: the one-line message names the layer (index
    and name) and the field at fault."""


class _FieldError(Exception):
    """Raised by a field check; the caller adds where (which layer) to the message."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


# ----------------------------------------------------------------------------- field kinds
def _int(value, field, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _FieldError(field, f"must be an integer, got {value!r}")
    if value < lo:
        raise _FieldError(field, f"must be an integer >= {lo}, got {value!r}")
    if value > 2 ** 31 - 1:
        raise _FieldError(field, f"must be < 2**31, got {value!r}")
    return int(value)


def _pair(value, field, lo):
    """An int or a two-element list/tuple of ints (height, width)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _FieldError(field, f"must be an integer or a pair [height, width], "
                                     f"got {list(value)!r}")
        return tuple(_int(v, field, lo) for v in value)
    v = _int(value, field, lo)
    return (v, v)


def _float(value, field):
    if not is_real_number(value):
        raise _FieldError(field, f"must be a number, got {value!r}")
    # computations run in float32: a larger value would become inf there
    if not math.isfinite(value) or abs(value) > _F32_MAX:
        raise _FieldError(field, f"must be finite in float32, got {value!r}")
    return float(value)


def _choice(value, field, choices):
    if value not in choices:
        raise _FieldError(field, f"must be one of {', '.join(map(repr, choices))}, "
                                 f"got {value!r}")
    return value


def _bool(value, field):
    if not isinstance(value, (bool, np.bool_)):
        raise _FieldError(field, f"must be true or false, got {value!r}")
    return bool(value)


# ----------------------------------------------------------------------------- base class
class Layer:
    """Base class of the layer specs.

    Subclasses list their fields in ``_FIELDS`` as ``(name, default, check)``, where a
    default of ``_REQUIRED`` marks a required field and ``check(value, field)`` returns the
    normalised value or raises. Layers compare equal when their type and fields are equal.
    """
    _FIELDS = ()
    kind = "layer"             # "synapse", "pool", "reshape", "neuron" or "readout"

    def __init__(self, *args, name=None, **kwargs):
        try:
            self._set_fields(args, kwargs)
        except _FieldError as exc:
            raise ConfigError(f"{type(self).__name__}{'' if name is None else f' {name!r}'}: "
                              f"{exc.field} {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{type(self).__name__}: {exc}") from None
        if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
            raise ConfigError(f"{type(self).__name__}: name must be an identifier "
                              f"(letters, digits, _), got {name!r}")
        self.name = name

    def _set_fields(self, args, kwargs):
        names = [f[0] for f in self._FIELDS]
        if len(args) > len(names):
            raise TypeError(f"takes {len(names)} positional fields ({', '.join(names)}), "
                            f"got {len(args)}")
        given = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise _FieldError(k, f"is not a field of {type(self).__name__} (fields: "
                                     f"{', '.join(names) or 'none'})")
            if k in given:
                raise TypeError(f"field {k} given twice")
            given[k] = v
        for field, default, check in self._FIELDS:
            value = given.get(field)
            if value is None:                # absent, or JSON's null: the default
                if default is _REQUIRED:
                    raise _FieldError(field, "is required")
                value = default
            setattr(self, field, value if value is None else check(value, field))
        self._check_fields()

    def _check_fields(self):
        """Checks between fields (after each field was checked alone)."""

    def fields(self):
        """The fields as a dict (tuples for pairs), without the name."""
        return {f[0]: getattr(self, f[0]) for f in self._FIELDS}

    def to_dict(self):
        """``{"type": ..., "name": ..., fields...}`` with lists for pairs (JSON/TOML-ready);
        fields left at None (inferred) are omitted."""
        d = {"type": type(self).__name__, "name": self.name}
        for k, v in self.fields().items():
            if v is not None:
                d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def output_shape(self, shape):
        """Output shape (per sample, per step) for an input ``shape``; raises ``_FieldError``
        naming the field that does not fit."""
        return shape

    def param_shapes(self, in_shape):
        """Shapes of this layer's trainable arrays for an input ``shape``: {name: shape}."""
        return {}

    def __eq__(self, other):
        return (type(self) is type(other) and self.name == other.name
                and self.fields() == other.fields())

    def __hash__(self):
        return hash((type(self).__name__, self.name, tuple(self.fields().items())))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields().items())
        name = f", name={self.name!r}" if self.name is not None else ""
        return f"{type(self).__name__}({args}{name})"

    def _with_name(self, name):
        """A copy under another name (the Network gives unnamed layers a default name)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.name = name
        return new

    @classmethod
    def _build(cls, fields, name):
        """Build from a dict of fields, letting ``_FieldError`` through (the Network adds
        the layer's index to its message)."""
        obj = object.__new__(cls)
        obj._set_fields((), fields)
        obj.name = name
        return obj


_REQUIRED = object()


def _spatial(shape, what):
    if len(shape) != 3:
        raise _FieldError("type", f"needs a (C, H, W) input, got shape {shape} (a {what} "
                                  f"cannot follow a Flatten or Linear)")
    return shape


def _window_out(size, kernel, stride, padding, field, axis):
    """Output length of a sliding window (floor mode), refusing a kernel larger than the
    padded input."""
    if kernel > size + 2 * padding:
        raise _FieldError(field, f"{kernel} is larger than the input's {axis} {size}"
                                 f"{f' + 2 x padding {padding}' if padding else ''}")
    return (size + 2 * padding - kernel) // stride + 1


# ----------------------------------------------------------------------------- synapses
def _synapse_params(weight_shape, n_out, bias):
    """A synaptic layer's arrays: ``weight`` and, with ``bias``, a bias per output."""
    return {"weight": weight_shape, "bias": (n_out,)} if bias else {"weight": weight_shape}


class Conv2d(Layer):
    """2-D convolution (cross-correlation, PyTorch's convention), no dilation or groups.

    Parameters
    ----------
    in_channels : int or None
        Input channels (None: inferred from the input shape; if given, it must match).
    out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0 (zeros on both sides)
    bias : bool, default True

    Weights ``weight`` (out_channels, in_channels, kh, kw) and ``bias`` (out_channels,).
    """
    kind = "synapse"
    _FIELDS = (("in_channels", None, lambda v, f: _int(v, f, 1)),
               ("out_channels", _REQUIRED, lambda v, f: _int(v, f, 1)),
               ("kernel_size", _REQUIRED, lambda v, f: _pair(v, f, 1)),
               ("stride", 1, lambda v, f: _pair(v, f, 1)),
               ("padding", 0, lambda v, f: _pair(v, f, 0)),
               ("bias", True, _bool))

    def output_shape(self, shape):
        C, H, W = _spatial(shape, "Conv2d")
        if self.in_channels is not None and self.in_channels != C:
            raise _FieldError("in_channels", f"is {self.in_channels} but the input has "
                                             f"{C} channels")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (self.out_channels, _window_out(H, kh, sh, ph, "kernel_size", "height"),
                _window_out(W, kw, sw, pw, "kernel_size", "width"))

    def param_shapes(self, in_shape):
        return _synapse_params((self.out_channels, in_shape[0]) + self.kernel_size,
                               self.out_channels, self.bias)


class Linear(Layer):
    """Fully connected layer ``y = x @ weight + bias`` on a flat input.

    Parameters
    ----------
    in_features : int or None (None: inferred; if given, it must match)
    out_features : int
    bias : bool, default True

    Weights ``weight`` (in_features, out_features) -- rows are inputs, the layout in which an
    input spike adds one contiguous row -- and ``bias`` (out_features,).
    """
    kind = "synapse"
    _FIELDS = (("in_features", None, lambda v, f: _int(v, f, 1)),
               ("out_features", _REQUIRED, lambda v, f: _int(v, f, 1)),
               ("bias", True, _bool))

    def output_shape(self, shape):
        if len(shape) != 1:
            raise _FieldError("type", f"needs a flat input, got shape {shape}; add a "
                                      f"Flatten before it")
        if self.in_features is not None and self.in_features != shape[0]:
            raise _FieldError("in_features", f"is {self.in_features} but the input has "
                                              f"{shape[0]} features")
        return (self.out_features,)

    def param_shapes(self, in_shape):
        return _synapse_params((in_shape[0], self.out_features), self.out_features, self.bias)


# ----------------------------------------------------------------------------- pools, reshape
class _Pool2d(Layer):
    """Pooling over non-overlapping or strided windows, no padding (floor mode).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int) or None (default: ``kernel_size``)
    """
    kind = "pool"
    _FIELDS = (("kernel_size", _REQUIRED, lambda v, f: _pair(v, f, 1)),
               ("stride", None, lambda v, f: _pair(v, f, 1)))

    def _check_fields(self):
        if self.stride is None:
            self.stride = self.kernel_size

    def output_shape(self, shape):
        C, H, W = _spatial(shape, type(self).__name__)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (C, _window_out(H, kh, sh, 0, "kernel_size", "height"),
                _window_out(W, kw, sw, 0, "kernel_size", "width"))


class SumPool2d(_Pool2d):
    __doc__ = "Sum over each window (spike counts stay integers). " + _Pool2d.__doc__


class AvgPool2d(_Pool2d):
    __doc__ = "Mean over each window (sum times 1/(kh kw) in float32). " + _Pool2d.__doc__


class MaxPool2d(_Pool2d):
    __doc__ = "Maximum over each window (a spike if any input spiked). " + _Pool2d.__doc__


class Flatten(Layer):
    """Reshape ``(C, H, W)`` to ``(C * H * W,)`` in C order (channel, row, column)."""
    kind = "reshape"

    def output_shape(self, shape):
        return (int(np.prod(shape)),)


# ----------------------------------------------------------------------------- neurons
_RESETS = ("zero", "subtract", "halve")
_DRIVES = ("window", "cumulative")


class LIF(Layer):
    """Leaky integrate-and-fire neurons, updated on the steps ``t % period == phase``.

    On an update step: ``v <- decay * v + I``; spike ``z = v > threshold``; reset where
    ``z``: ``zero`` (``v = 0``), ``subtract`` (``v -= threshold``) or ``halve`` (``v *= 0.5``). The
    current ``I = scale * (synaptic layer applied to the drive + its bias)``, where the drive
    is the presynaptic spikes since the previous update (``window``) or since step 0
    (``cumulative``). See ``docs/network.rst`` for the exact float32 order.

    Parameters
    ----------
    decay : float in [0, 1], default 0.9
    threshold : float > 0, default 0.8
    reset : {"zero", "subtract", "halve"}, default "zero"
    period : int >= 1, default 1 (update every step)
    phase : int in [0, period), default 0
    drive : {"window", "cumulative"}, default "window"
    scale : float, default 1.0
    """
    kind = "neuron"
    _FIELDS = (("decay", 0.9, _float), ("threshold", 0.8, _float),
               ("reset", "zero", lambda v, f: _choice(v, f, _RESETS)),
               ("period", 1, lambda v, f: _int(v, f, 1)),
               ("phase", 0, lambda v, f: _int(v, f, 0)),
               ("drive", "window", lambda v, f: _choice(v, f, _DRIVES)),
               ("scale", 1.0, _float))

    def _check_fields(self):
        if not 0.0 <= getattr(self, "decay", 1.0) <= 1.0:
            raise _FieldError("decay", f"must be in [0, 1], got {self.decay!r}")
        if self.threshold <= 0:
            raise _FieldError("threshold", f"must be > 0, got {self.threshold!r}")
        if self.phase >= self.period:
            raise _FieldError("phase", f"must be < period={self.period}, got {self.phase}")
        if self.period > MAX_STEPS:
            raise _FieldError("period", f"must be <= {MAX_STEPS}, got {self.period}")

    @property
    def beta(self):
        """The decay factor applied to ``v`` on every update (1 for :class:`IF`)."""
        return self.decay

    def update_steps(self, T):
        """The steps ``t < T`` on which the layer updates."""
        return [t for t in range(T) if t % self.period == self.phase]


class IF(LIF):
    """Integrate-and-fire neurons: :class:`LIF` without leak (``v <- v + I``).

    Parameters
    ----------
    threshold, reset, period, phase, drive, scale : as :class:`LIF`
    """
    _FIELDS = tuple(f for f in LIF._FIELDS if f[0] != "decay")

    @property
    def beta(self):
        return 1.0


class RateReadout(Layer):
    """Spike counts of the preceding spiking layer over the run, divided by the number of
    steps (``norm="steps"``) or of that layer's updates (``norm="updates"``).

    The layers after it (only :class:`Linear` and :class:`Flatten`) run once on these rates.
    """
    kind = "readout"
    _FIELDS = (("norm", "updates", lambda v, f: _choice(v, f, ("steps", "updates"))),)


LAYER_TYPES = {c.__name__: c for c in (Conv2d, SumPool2d, AvgPool2d, MaxPool2d, Flatten, Linear,
                                       LIF, IF, RateReadout)}


# ----------------------------------------------------------------------------- encoders
class Encoder(Layer):
    """Base class of the input encoders (they make the input of step ``t``)."""
    kind = "encoder"


class Hybrid(Encoder):
    """Today's hybrid coding of uint8 images, ``T`` steps.

    Steps ``t < n_det`` are deterministic (pixel ``u`` spikes if ``u / 255 > 1 - t / n_det``,
    in float64), the others Bernoulli with probability ``u / 255`` from a counter-based
    splitmix64 stream keyed by (seed, epoch, sample id, step, pixel): the same spikes for any
    batch split or thread count.

    Parameters
    ----------
    T : int in [1, 10000], default 10
    n_det : int in [0, 10000], default 5
    """
    _FIELDS = (("T", 10, lambda v, f: _int(v, f, 1)), ("n_det", 5, lambda v, f: _int(v, f, 0)))

    def _check_fields(self):
        for field in ("T", "n_det"):
            if getattr(self, field) > MAX_STEPS:
                raise _FieldError(field, f"must be <= {MAX_STEPS}, got {getattr(self, field)}")


class Direct(Encoder):
    """Inputs that already are spikes or event frames, shape ``(N, T, C, H, W)`` (any real
    values, e.g. event counts per frame), fed to the first layer unchanged at each step.

    Parameters
    ----------
    T : int in [1, 10000], the number of frames per sample
    """
    _FIELDS = (("T", _REQUIRED, lambda v, f: _int(v, f, 1)),)

    def _check_fields(self):
        if self.T > MAX_STEPS:
            raise _FieldError("T", f"must be <= {MAX_STEPS}, got {self.T}")


ENCODER_TYPES = {"Hybrid": Hybrid, "Direct": Direct}
